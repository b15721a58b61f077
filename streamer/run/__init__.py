"""Running one scan on 1..R ranks: the pieces shared by every driver (``run``, ``recon``,
``demo``). :mod:`streamer.run.close` is the close handshake between ranks, without I/O."""
