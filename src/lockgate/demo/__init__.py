"""Local demo upstreams and the end-to-end demo that ``lockgate demo`` runs."""
