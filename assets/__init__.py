"""Data the code reads at run time (quantization recipes, the KL-divergence text), installed as the
package `q35local.assets` (pyproject maps it here) so a wheel carries it: find it with
`importlib.resources.files("q35local.assets")`, never by a path relative to the source tree."""
