"""Students: built from the teacher (`build`), sized to a target, pruned, their memory estimated.
"""
