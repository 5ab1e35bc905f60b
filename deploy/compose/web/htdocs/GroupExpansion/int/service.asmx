<?xml version="1.0"?>
<!-- distribution-list expansion placeholder (lab) -->
<ExpandResult/>
