"""workers: model hosting and evaluation (model loading, benchmark tasks, the evaluation engine, the Ray actor).

Submodules are imported on use, so that importing ``workers.tasks`` does not start torch or Ray.
"""
