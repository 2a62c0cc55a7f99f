"""Measurements behind docs/: the recipe study, the label curve and its pays-check, the frozen probe,
and the tools that render results/ into docs/. They import the product (config.py, imdb_bert/); the
product never imports them."""
