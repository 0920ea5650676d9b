"""KDS: the global <-> zone control-plane sync, in Kuma's wire shape (see kds.proto and docs in codec.py)."""
