"""The channel between front-end processes and engine processes.

A front end checks a request against the model's signature, writes its tensors into its own
shared-memory arena and sends the engine a small control message that says where they are; the
engine reads them in place, queues them on the model's batcher beside every other front end's
requests, and sends the outputs back, the replies of one batch to one front end in one frame.
Engines publish the models they serve (signatures, configs, readiness) to every front end, which
serves the V2 protocol from them without loading any model.
"""

from appliance.channel.arena import Arena
from appliance.channel.engine import EngineServer
from appliance.channel.frontend import EngineLinks

__all__ = ["Arena", "EngineLinks", "EngineServer"]
