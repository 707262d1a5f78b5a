"""The ``dreambuild`` command line (``commands``), its client of the service
(``service_client``) and the demo (``demo``, ``template_image``)."""
