"""The training loop and what it stands on: devices, DDP, checkpoints, schedules and the teacher's
cached outputs.
"""
