"""Import Opacus without its logging side effect.

``opacus.utils.module_utils`` calls ``logging.basicConfig()`` at import, which adds a root
handler and prints every Flower log line twice. Import it here first and remove that handler.
"""

import logging

_before = set(logging.getLogger().handlers)
import opacus.utils.module_utils  # noqa: E402, F401

for _handler in set(logging.getLogger().handlers) - _before:
    logging.getLogger().removeHandler(_handler)
