"""The stages of a docking, one owner each (see docs/STYLE.md)."""
