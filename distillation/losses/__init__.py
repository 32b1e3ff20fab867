"""The distillation losses, and the torch-free checks of their settings.
"""
