"""How the student learns from the teacher in a generative job (`JobConfig.method`): token-level
distillation on the file's answers, sequence-level distillation on the teacher's answers, or
on-policy distillation on the student's own samples scored by the teacher. One module per
method, one `registry`; `checks` is torch-free, for the API.
"""
