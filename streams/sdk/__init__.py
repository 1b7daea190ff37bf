"""The producer SDK: what an application imports to log predictions and feedback.

`streams` re-exports the public names (`streams.init`, `get_application`, `JoinKey`, ...).
"""
