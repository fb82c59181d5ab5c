//! `libharvest_spank.so`: a SPANK plugin loaded by slurmstepd. It lands with the plugin issue.
