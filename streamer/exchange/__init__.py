"""Between ranks: the links (in-memory and MPI), the band exchange that turns projections
into sinogram bands (the reslice) and the buffer that holds one rank's band."""
