"""What the apps and the service show, apart from the widgets and the HTTP: thumbnails, figures and report HTML.

* :mod:`.thumbnails`: small JPEG thumbnails made on the server, cached (the apps' grids, the service's
  ``?size=thumb``), and tiles of them for figures;
* :mod:`.page`: HTML that Jupyter displays, a figure as PNG, long names shortened for the page;
* :mod:`.tuning`: the index-tuning notebook's HTML: the tuning table of a
  :class:`~similar_images.measure.TuneReport` and one query's exact neighbours next to an index's.

It sits between the apps and the service (which show it) and the measuring code (which it shows); it imports no
widget library and no web framework.
"""
