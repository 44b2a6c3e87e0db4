"""The chaos and abuse suite: `make chaos` (python -m chaos) runs every scenario against a
local cluster on loopback and prints what was published, delivered, lost and duplicated."""
