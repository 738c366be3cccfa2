"""Keras's own formats read and written as plain data: no Keras at run time."""
