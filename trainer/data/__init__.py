"""Files to training batches: images, captions, masks, buckets, the epoch plan and its caches. Must not touch the UI."""
