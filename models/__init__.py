"""The Paraformer model definition in FunASR's names (`paraformer.py`) and its export to the
device formats (`export.py`); installed as `paraedge_models`. The shipped demo model (`demo/`)
is device package data (see edge/assets.py). Host only: needs torch.
"""
