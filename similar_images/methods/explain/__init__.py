"""Why are two images similar? Similarity maps over the last convolutional feature map.

:func:`explain` (a database, a query, a result id) and :func:`explain_pair`
(an embedder and two images) return an :class:`Explanation`: one map for the
query and one for the result, over the grid of the model's last
convolutional feature map (7x7 for VGG16 and MobileNetV2), with the cosine
similarity they explain.

**Average pooling** (``vgg16-avg``, ``mobilenetv2``): the similarity
decomposes exactly. With ``q`` the normalised query vector and ``F(h, w)``
the result's feature vector at position ``(h, w)``, the result's map is::

    result_map[h, w] = (1 / HW) * q . F(h, w) / ||mean F||

and its cells sum to the cosine similarity ``q . mean F / ||mean F||``. The
query's map is the same with the roles swapped, and sums to the same score.

**Max pooling** (``vgg16-max``): the vector's channel ``c`` is the largest
value of ``F_c`` over the grid, so the similarity is the sum over channels of
``q_c * F_c(argmax_c) / ||max F||``; each channel's term is placed at its
arg-max position. These maps also sum exactly to the score.

**Other models** (``vgg16-fc2``: fully connected layers follow the
convolutions): a Grad-CAM style map, ``sum_c alpha_c * F_c(h, w)`` with
``alpha_c`` the spatial mean of the gradient of the cosine similarity with
respect to ``F_c``. It is *approximate* (it does not sum to the score) and is
labelled so in every output. The map keeps its sign; overlays show its
positive part.

The maps are drawn by :func:`render_explanation` (a PNG with the query and the
result side by side, a perceptual colour map over each photo, the score, the
method and an "approximate" label where it applies) and serialised by
:meth:`Explanation.to_dict`. An :class:`ExplainCache` keeps the feature maps of
images (keyed by model, weights and the file's path, mtime and size, or the
bytes' hash), the maps of pairs and the rendered PNGs, so a repeated view runs
no model; a new pair costs one forward pass of the two images that are not
cached (at most two images in one batch).

Example:
    >>> from similar_images import Database                           # doctest: +SKIP
    >>> from similar_images.methods.explain import explain, explanation_png
    >>> db = Database.open("coco-db")                                  # doctest: +SKIP
    >>> e = explain(db, 12, 40)                                        # doctest: +SKIP
    >>> e.score, e.method, float(e.result_map.sum())                   # doctest: +SKIP
    (0.734..., 'exact-avg', 0.734...)
    >>> Path("why.png").write_bytes(explanation_png(e))               # doctest: +SKIP
"""

from __future__ import annotations

from .cache import ExplainCache, default_cache
from .explainer import Explainer, explain, explain_pair, explainer_for
from .maps import EXACT_AVG, EXACT_MAX, GRADIENT, METHODS, Explanation, exact_avg_maps, exact_max_maps, gradcam_map
from .render import colorize, explanation_png, render_explanation

__all__ = [
    "EXACT_AVG",
    "EXACT_MAX",
    "GRADIENT",
    "METHODS",
    "ExplainCache",
    "Explainer",
    "Explanation",
    "colorize",
    "default_cache",
    "exact_avg_maps",
    "exact_max_maps",
    "explain",
    "explain_pair",
    "explainer_for",
    "explanation_png",
    "gradcam_map",
    "render_explanation",
]
