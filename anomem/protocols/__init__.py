"""The paper's evaluation protocols (§4): one-vs-all, OoD, cross-type, linear
evaluation, relative error reduction, and the resumable grid runner."""
