"""TEST DOUBLE of the older layout's communication package, which exported the factory directly
except in the versions that kept it only in `communication_factory` (layout `old-submodule`)."""

import os

if os.environ.get("MOECOMM_FAKE_TRTLLM_LAYOUT", "new") != "old-submodule":
    from .communication_factory import CommunicationFactory  # noqa: F401
