/etc/superpeer/
