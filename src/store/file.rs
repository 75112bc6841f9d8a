//! The local directory store (the embedded default). Implemented in full below.
