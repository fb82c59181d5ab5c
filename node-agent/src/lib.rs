//! `harvestd`, the node agent. Hardware discovery, the ledger and idle slots land with the plugin
//! and agent issue.
