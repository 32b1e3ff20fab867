"""Model folders: loading them safely (`loading`), checking their files and weights, and what a
model is (`info`).
"""
