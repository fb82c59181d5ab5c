//! The harvest client library: acquire a lease, invoke functions on its executor directly (no
//! scheduler hop), release it. The library and the `harvest` CLI land with the scheduler issue.
