"""The local backend: a sweep's trials as processes on this machine (`critbatch run`)."""
