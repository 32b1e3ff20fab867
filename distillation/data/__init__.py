"""Records and the files they come in, labels, vocabularies: what a job reads (no torch).
"""
