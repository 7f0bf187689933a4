"""The book's helpers: figures (`viz`), the target-assignment inspector (`widgets`) and the live
training view (`training_view`).

They build on the package's parts; nothing in the package imports them.
"""
