"""Procedurally rendered stand-in for EvalMuse-40K (scenes, generators, annotators).

``scene`` holds the grammar (scenes, prompts, elements and their checks), ``render`` draws a
scene, ``generators`` simulates text-to-image models with distinct weaknesses, ``annotators``
simulates the human labels, and ``build`` writes the dataset in the EvalMuse file formats.
"""
