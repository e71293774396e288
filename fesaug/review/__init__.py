"""Review: a static page to look at a balanced set's synthetic faces before training on them,
and mark the bad ones for ``fesaug balance --reject``.

``from fesaug.review import write_review`` is the library form of ``fesaug review``.
"""

from typing import TYPE_CHECKING

from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.review.page import ReviewResult, write_review

__all__ = ["ReviewResult", "write_review"]
__getattr__, __dir__ = lazy_exports(__name__, {"ReviewResult": ".page", "write_review": ".page"})
