"""The bottom layer: errors, devices, file and image I/O, distributed helpers and shared result types.

Everything in the package may import from here; nothing here imports from the rest of the package.
"""
