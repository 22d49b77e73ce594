"""Everything about data: labels, CT and centroid I/O, phantom, preprocessing and the DataModule."""
