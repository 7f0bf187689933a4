"""The book's helpers: figures (`viz`), the target-assignment inspector (`widgets`), the detection
playground (`playground`), the live training view (`training_view`) and the data the chapters run on
(`source`: the bundled synthetic VOC, or a reader's own).

They build on the package's parts; nothing in the package imports them.
"""
