"""What a finished job leaves: the model folder, its report and card, its runtimes (ONNX) and
predictors.
"""
