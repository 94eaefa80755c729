"""Example data sets shipped with stanhier (``fish.csv``: the seed example)."""
