"""The live view: the feed a scan publishes (previews, final slices, CoR control), its
message schema, the preview reconstruction, the public client and the browser viewer."""
