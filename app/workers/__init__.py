"""The registry of training workers: what each advertises (device, memory, queues) and whether it
is alive."""
