//! Tables for `esi:foreach` items and calls of document-defined functions.

use super::*;
