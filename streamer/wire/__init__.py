"""The wire: the frame protocol (headers, dtypes, limits) and the ZeroMQ endpoints that carry
it. The bottom of the flow; everything else imports from here, this imports nothing above."""
