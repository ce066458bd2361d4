//! Targeted races (filled in below).

pub fn layer_link_for_a_doomed_blob() {}
pub fn manifest_put_with_a_doomed_layer() {}
pub fn tag_moved_onto_an_untagged_manifest() {}
pub fn blob_reuploaded_while_hidden() {}
pub fn stop_in_the_middle_of_the_sweep() {}
