"""The bundled demo: a synthetic arithmetic task with known confounders and a tiny
teacher/student pair trained on it, so everything runs out of the box on a laptop CPU."""
