"""TEST DOUBLE of the older module path, which exported the factory directly.

With MOECOMM_FAKE_TRTLLM_NEW_PATH=1 it does not, as in newer upstream versions, where only
`communication.communication_factory` has it.
"""

import os

if os.environ.get("MOECOMM_FAKE_TRTLLM_NEW_PATH") != "1":
    from .communication_factory import CommunicationFactory  # noqa: F401
