"""The image every livo component is declared with (`livo.images.PUBLISHED_IMAGE`).

The package's actual image is chosen at compile time (`--image`, `LIVO_IMAGE`, else this one) and put in place by
`livo.images.retarget_package`, so component modules never read the environment at import time.
"""

from livo.images import PUBLISHED_IMAGE

LIVO_IMAGE = PUBLISHED_IMAGE
