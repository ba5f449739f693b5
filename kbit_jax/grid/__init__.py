"""The grid stage: plan the cells, estimate their cost, run them resumably on one or many hosts."""
