"""The budget-quality frontier: the contenders, declared once; the runner that trains and evaluates them at
equal budgets and optimisation; and its tables and plot."""
