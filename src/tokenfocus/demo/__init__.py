"""Procedurally rendered stand-in for EvalMuse-40K (scenes, generators, annotators)."""
