"""Model lifecycle: the content-addressed cache, the fleet manifest and its canary rule."""
